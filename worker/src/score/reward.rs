//! Step 4 reward scoring (being written).
