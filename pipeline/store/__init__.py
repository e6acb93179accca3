"""Storage: the HDF5 intermediates under OUT/work/ (readers and codecs) and the WebDataset shard writer."""
