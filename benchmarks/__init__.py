"""The product's benchmarks, each a small entry point on benchmarks.harness that prints a table and writes
benchmarks/results/<name>.md/.json (the current figure; the history is git's):

- `python -m benchmarks`: the real model served, against the previous main, LitServe and Ray Serve; cold start;
- `python -m benchmarks.server_cost`: the servers' own cost per request, with a near-zero-cost model;
- `python -m benchmarks.profile_service`: where a served request's time goes, by layer (py-spy);
- `python -m benchmarks.memory`: each worker's memory after warm-up and after a load;
- `python -m benchmarks.int8_speed`: int8 against fp32 as a worker runs them;
- `python -m benchmarks.gpu`: the check to run on a CUDA host;
- `python -m benchmarks.camvid` and `benchmarks.demo_seeds`: accuracy over seeds, clean and under camera shifts.
"""
