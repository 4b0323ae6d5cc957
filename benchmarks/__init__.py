"""samrt.benchmarks"""
