"""dknn-agent: Deep k-Nearest-Neighbours credibility for deployed classifiers."""

__version__ = "0.1.0"
