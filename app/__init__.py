"""HTTP layer: routes, schemas and the app factory (arrives with the serving issue)."""
