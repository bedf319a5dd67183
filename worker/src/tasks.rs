//! Turns a lease from the coordinator into one result per item.
