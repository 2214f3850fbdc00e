"""The optional JVM speed-ups of local mode: the driver-chunks jar and the class archive."""
