//! Step 3 choice scoring (being written).
