"""Peer servers for the benchmark: the same model, variant and per-request work, served by LitServe and
Ray Serve as their documentation shows. Each is started as `python -m benchmarks.peers.<name> --model DIR
--variant V --port P` and answers POST /segment (multipart field `image`) with the palette PNG mask."""
