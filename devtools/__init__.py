"""Development tools: a server as a child process (tests, benchmarks) and the GPU check.

Not part of the product: the Docker images do not copy this package.
"""
