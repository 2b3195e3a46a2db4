"""Language-model runs: the LM wiring (`run`), the token-file batch source (`sampler`), documents as rows
(`rows`), Abacus ids on text (`abacus`), evaluation at several context lengths (`contexts`), `tinyformer
compare` (`compare`, `compare_plots`) and publishing to the HF ecosystem (`publish`)."""
