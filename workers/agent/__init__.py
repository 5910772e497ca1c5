"""The voice agent worker kind: speech in, a reply spoken back into the call."""
