"""Local stand-ins for services that cannot run here for real (AWS, ResultsDB).

They exist for the demo, the tests and the benchmarks, and are named as stand-ins wherever used.
"""
