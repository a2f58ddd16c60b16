"""The decoded-image store: images decoded once per (content, decode params), kept in immutable shards, read in batches.

Layout of a store folder (the decode stage's DVC output):

    meta.json                     format, decode params, shard list, per split: count, paths and index digests
    <split>-<sha>.index.npy       int64 N x 3 per split row: (shard number in meta's list, offset, length)
    shards/<params>-<sha>.bin     encoded images, back to back; named by the SHA-256 of their bytes
    shards/<params>-<sha>.keys.npy  per entry: SHA-256 of the source file's bytes, offset, length

A shard is never modified once written: adding images writes a new shard beside the old ones, so
DVC (a directory output is cached file by file) finds the old shards unchanged and stores nothing
new for them; with `cache.type: hardlink` the workspace file is the cache's file. Entries are
looked up by the source file's content hash, so a renamed, moved or re-added image is found again.
Every shard also has a hard link in a pool beside DVC's cache, where the next run finds it after
DVC has deleted the stage's output. meta.json is written last: until then the previous store is
whole. Mechanism and measurements: docs/data.md.

The package's modules, each imported on its own (this file imports none of them, so that a stage
depends on the modules it uses only): `layout` (the format: params, meta.json, digests), `writer`
(the decode stage: shards, lookup, commit), `pool` (the hard-link pool beside DVC's cache) and
`reader` (the train stage: batches of a split).
"""
