"""Fakes and helpers the tests share, which the product never ships (the wheel packages agent*, connectors*, dknn_events*)."""
