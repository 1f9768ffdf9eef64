"""Source datasets: find image/label pairs in each supported layout
(:mod:`nudiff.datasets.sources`) and convert them into one prepared form,
PNG images + int32 TIFF instance maps + ``manifest.csv``
(:mod:`nudiff.datasets.prepare`)."""
