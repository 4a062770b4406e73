"""Episodes, the zarr trajectory store, the sequence sampler and the one demonstration
loader every trainer uses."""
