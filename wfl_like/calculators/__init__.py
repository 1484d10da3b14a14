"""Operations that evaluate calculators on structures."""
