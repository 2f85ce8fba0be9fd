"""Local services the project starts itself: the Kafka broker, and Kafka topic admin."""
