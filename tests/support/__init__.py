"""Fakes the tests share and the product never ships (the wheel packages agent*, connectors*, dknn_events*)."""
