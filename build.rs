// `sqlx::migrate!` embeds `migrations/` at compile time, but cargo does not know the macro reads that
// directory: without this, adding or editing a migration would not rebuild the binary that embeds it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
