"""KServe v2 HTTP/REST frontend, its JSON/binary codec and the try-it page."""
