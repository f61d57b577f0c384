"""What a study is, read from its configuration alone (leanmed.study): the same whatever the configuration's key
order."""

from leanmed.study import (
    KNOWN_DATASETS,
    NOT_DOWNSAMPLED,
    canonical_config,
    downsample_mode_at,
    studied_datasets,
    training_runs,
)

CONFIG = {
    "settings": ["fp32", "amp"],
    "seeds": [2, 1],
    "datasets": {"lidc": {"models": ["test_vit"]}, "rsna": {"models": ["mlp_small", "densenet121"]}},
    "downsampling": {"runs": [{"scales": [4, 2], "settings": ["fp32"], "model": "mlp_small", "dataset": "rsna"}]},
}


def test_the_canonical_config_sorts_every_mappings_keys_and_keeps_every_lists_order():
    canonical = canonical_config(CONFIG)
    assert canonical == CONFIG
    assert list(canonical) == ["datasets", "downsampling", "seeds", "settings"]
    assert list(canonical["datasets"]) == ["lidc", "rsna"]
    assert list(canonical["downsampling"]["runs"][0]) == ["dataset", "model", "scales", "settings"]
    assert canonical["seeds"] == [2, 1] and canonical["downsampling"]["runs"][0]["scales"] == [4, 2]
    assert canonical["datasets"]["rsna"]["models"] == ["mlp_small", "densenet121"]
    # Snakemake compares params by repr: the same values in any key order give one repr.
    reordered = {key: CONFIG[key] for key in reversed(list(CONFIG))}
    reordered["datasets"] = {key: CONFIG["datasets"][key] for key in reversed(list(CONFIG["datasets"]))}
    assert repr(canonical_config(reordered)) == repr(canonical)


def test_datasets_and_runs_come_in_the_papers_order_whatever_the_configs_order():
    assert KNOWN_DATASETS == ("rsna", "lidc")
    for config in (CONFIG, canonical_config(CONFIG)):
        assert studied_datasets(config) == ["rsna", "lidc"]
        runs = training_runs(config)
        assert [run["dataset"] for run in runs[:4]] == ["rsna"] * 4 and runs[4]["model"] == "densenet121"
        assert len(runs) == (2 + 1) * 2 * 2 + 2 * 1 * 2  # main study, then the downsampling runs at S = 4 and 2
        assert runs[-4:] == [dict(dataset="rsna", model="mlp_small", setting="fp32", scale=scale, seed=seed)
                             for scale in (4, 2) for seed in (2, 1)]
    left_out = {**CONFIG, "datasets": {**CONFIG["datasets"], "rsna": {"models": []}}, "downsampling": {"runs": []}}
    assert studied_datasets(left_out) == ["lidc"]
    assert {run["dataset"] for run in training_runs(left_out)} == {"lidc"}


def test_a_run_at_full_resolution_has_no_downsampling_mode_whatever_the_config_says():
    for mode in ("smaller_input", "pooled_upsampled"):
        assert downsample_mode_at(1, mode) == NOT_DOWNSAMPLED == "none"
        assert [downsample_mode_at(scale, mode) for scale in (2, 4, 8)] == [mode] * 3
