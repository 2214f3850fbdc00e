"""The long-running worker (``python -m spark_detector run``): the loop that receives chunk
messages, picks the chunks whose turn it is, runs one Spark job and settles each chunk with
the engine. It imports ``spark`` and ``engine``; the commands in ``ops`` never import it.
"""
