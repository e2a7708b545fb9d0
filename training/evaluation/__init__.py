"""Judging routers: evaluation against baselines on a test split (`evaluate`, the `carrot evaluate`
command), cost–quality curves and ground truth (`curves`), the field's metrics (`metrics`),
baselines (`baselines`), plots (`plots`), re-splits (`resplit`), the reproducible benchmark
(`benchmark`), train/test prompt overlap (`overlap`) and the online-learning benchmark
(`learning_benchmark`)."""
