//! strata library.
