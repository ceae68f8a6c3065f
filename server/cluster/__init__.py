"""Scale-out on Ray Serve: the same repository and KServe v2 protocol on a Ray cluster.

Each node's ``kserve`` ingress replica listens for KServe v2 gRPC itself
(``frontend.py``; Serve's own proxies are off) and forwards model RPCs to one
deployment per model; the model replicas run the single server's own data plane,
batcher and backends. Nothing here balances load or tracks membership: Ray does.
"""
