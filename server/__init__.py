"""The inference server. Nothing under server/ imports torch: it runs from
``pip install .[serve]`` and reads only the model repository."""
