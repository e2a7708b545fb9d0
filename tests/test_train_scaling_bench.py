"""The training-time benchmark's replicated tables: copies are near neighbours, tasks split as asked, and a
table written for `carrot train` finds its embeddings in the cache (so an end-to-end run skips the encoder)."""

import torch

from carrot_hub.data import load_routing_table
from training.embeddings import embed_table
from training.prepare import new_training_router
from training.scaling import main, replicated_table, write_replicated_table

from .reliability_fixtures import clustered_embeddings, synthetic_table


def test_a_replicated_table_is_copies_of_the_table_jittered():
    embeddings, _ = clustered_embeddings(n_per_cluster=20)
    table = synthetic_table(40)
    grown, grown_embeddings = replicated_table(table, embeddings, 100, n_tasks=6, jitter=0.01)
    assert len(grown) == 100 and len(set(grown.prompt_ids)) == 100 and len(set(grown.tasks)) == 6
    torch.testing.assert_close(grown_embeddings[:40], embeddings)  # the first copy is the table itself (re-normalised)
    similarity = (grown_embeddings[40:80] * embeddings).sum(1)
    assert bool((similarity > 0.9).all()) and bool((similarity < 1.0).all())
    assert (grown.scores[40:80] == table.scores).all()


def test_a_written_table_finds_its_embeddings_in_the_cache(tmp_path):
    embeddings, _ = clustered_embeddings(n_per_cluster=20)
    grown, grown_embeddings = replicated_table(synthetic_table(40), embeddings, 60, n_tasks=None, jitter=0.01)
    command = write_replicated_table(grown, grown_embeddings, tmp_path / "table", tmp_path / "cache", {"max_prompt_tokens": 64})
    assert command.startswith(f"carrot train --kind knn --data {tmp_path / 'table'} --embeddings-cache {tmp_path / 'cache'}")
    loaded = load_routing_table(tmp_path / "table", split="train", progress=False)
    router = new_training_router(loaded, "knn", max_prompt_tokens=64)
    router.encode = None  # an encoder pass would fail: the cache must serve every prompt
    torch.testing.assert_close(embed_table(router, loaded, cache_dir=tmp_path / "cache", progress=False), grown_embeddings)


def test_write_table_needs_a_cache_folder(capsys):
    assert main(["--sizes", "200", "--write-table", "somewhere"]) == 2
    assert "--write-table needs --cache-dir" in capsys.readouterr().err
