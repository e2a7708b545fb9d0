"""The `carrot serve` gateway: an OpenAI-compatible routing server and the outcome log it learns from.

- `app`: the ASGI app (`create_app`, `Gateway`, `GatewaySettings`);
- `upstreams`: the upstreams file and calls to OpenAI-compatible endpoints, with failure classes;
- `batching`: routing concurrent requests together, off the event loop;
- `chat_request`: reading a client's request; `prometheus_metrics`: the gateway's Prometheus metrics;
- `outcome_log`: one record per served request, and feedback; `learning`: the online learner (`--learn`);
- `fake_upstream`, `local_server`: a fake OpenAI-compatible upstream and a loopback uvicorn runner
  for tests and benchmarks.

Submodules are imported where used, so that importing one does not pull in the web stack.
"""
