"""The Spark side: the session, the micro-batch job and its SQL, the chunk fetch, and the
batch's result assembled per chunk (Arrow compute) into what the engine applies.

``speedups/`` holds the optional JVM speed-ups (the driver-chunks jar, the class archive); the
rest works without them. Nothing here imports the engine, the worker loop or the commands.
"""
