"""Data processing: events contract, ETL, validation and quarantine, features, Feast, drift."""
