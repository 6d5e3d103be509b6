"""HTTP routers, one per protocol; each only translates its wire format to `ModelVersion` calls."""
