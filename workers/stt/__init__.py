"""Speech-to-text engines behind one small streaming interface (:mod:`workers.stt.engine`)."""
