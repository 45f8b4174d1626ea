//! `sqlx::migrate!` (src/pg/mod.rs) embeds `migrations/` when the crate is compiled. It tracks
//! the files it embedded, not the directory: without this, a build after a migration was added,
//! removed or renamed would still run the migrations it embedded before.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
