"""The floor under the rooms: what features/, trml/ and flows/ all need, defined once (docs/architecture.md).

It imports nothing from the rooms and no media library; torch only inside the device functions, so the
Parquet side can import it without torch.
"""
