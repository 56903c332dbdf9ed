"""Models: their metadata and registry on disk, loaders per format, runners that predict a batch,
ensembles, routing between versions, and the catalog that loads, warms and swaps them at run time."""
