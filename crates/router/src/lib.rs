//! The router: picks the model that serves each `model="auto"` request (see ARCHITECTURE.md).
