"""Scale-out on Ray Serve: the same repository and KServe v2 protocol on a Ray cluster.

Ray's gRPC proxy (on every node) hands each RPC to the ``kserve`` ingress
deployment, which forwards model RPCs to one deployment per model; the model
replicas run the single server's own servicer, data plane, batcher and
backends. Nothing here balances load or tracks membership: Ray does.
"""
