"""samrt.benchmarks: latency and throughput of engines, the server, AMG and mask upscaling, as
rows with the machine's description (`samrt bench`).

Floor "app" (`samrt.layers`): may import every floor.
"""
