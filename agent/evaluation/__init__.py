"""Measuring a bundle on your own data (`dknn-agent evaluate`): is its credibility worth deploying?

`metrics` holds the measures (pure numpy), `scoring` runs a bundle over a data set, `plots`
draws the figures, `report` puts them together for `evaluate`; the MNIST benchmarks of the
research harness use the same pieces, so a number means the same thing in both.
"""
