"""``stream bench``: this pipeline against a bare librdkafka loop and peer engines."""
