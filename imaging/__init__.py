"""Encoded images and pixel arrays -> model input, as a model's preprocessing spec says.

Shared by the server and the exporter's calibration/prediction: it depends only on the
repository contract (modelrepo), never on either of them.
"""
