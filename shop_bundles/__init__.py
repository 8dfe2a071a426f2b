"""shop_bundles: a Django plugin that turns a shop's order history into bundle offers."""
