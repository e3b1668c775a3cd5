"""Access control: TLS and mTLS (`tls`), bearer tokens (`tokens`), the policy of roles and
principals (`policy`), the interceptor that admits or refuses every call (`guard`), the per-principal
CheckEntry limit (`limits`), the audit trail (`audit`), and how riskgate's own tools identify
themselves (`identity`, `commands`)."""
