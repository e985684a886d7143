"""Local fake provider servers that speak the providers' documented protocols on 127.0.0.1."""
