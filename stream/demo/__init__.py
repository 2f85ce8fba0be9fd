"""The demo pipeline: synthetic card payments scored for fraud."""
