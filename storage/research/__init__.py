"""Research projects and teaching collections: their own database, bucket and access."""
