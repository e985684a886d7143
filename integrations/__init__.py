"""Built-in integrations (channels, CRMs, ad audiences). Each registers by name through the
`nurture.integrations` entry-point group declared in pyproject.toml."""
