"""Turning routing tables into CARROT routers.

- `training.knn.train_knn_router`: CARROT-KNN, k chosen by cross-validation;
- `training.heads.train_heads_router`: MLP heads on the frozen encoder, early-stopped;
- `training.finetune.train_finetuned_router`: encoder and heads trained together (accelerate);
- `training.embeddings.embed_table`: the router encoder's embeddings of a table, cached;
- `training.candidates`: adding a candidate LLM to a trained router (fitting its row only) or removing one;
- `training.output.save_router_atomically`: the only way training writes a router folder;
- `training.train`: the `carrot train` command;
- `training.evaluation`: judging routers (evaluation, metrics, baselines, the benchmark, re-splits).
"""
