"""The ACS call emulator's pure parts: WAV loading, dominant speakers, playback model."""
