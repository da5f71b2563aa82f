"""The fake Magento store lives in ``connectors/fakes/magento.py`` (it ships with the package for
``fibric up --demo`` and the benchmarks); tests import it from here too."""

from connectors.fakes.magento import (  # noqa: F401
    DEFAULT_TOKEN,
    FakeMagento,
    main,
    make_order,
    parse_search_criteria,
    search_orders,
    seed_orders,
)

if __name__ == "__main__":
    main()
