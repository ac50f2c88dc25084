"""Hand-made scene-graph inputs for the concept logic (meacap-original.md 4.2-4.5), run through the same reference
functions with the tiny SBERT: expected/concepts.json. No parser involved: the graph strings are given."""

CASES = [
    {
        "name": "attributes_numbers_oneary_comma_empty",
        "graphs": [
            "( dog , is , brown ) , ( dogs , is , 2 ) , ( dog , sit on , bench )",
            "( dog , is , brown ) , ( man , stand next to , behind , bench )",
            "( dog , is , brown ) , ( park ) , ( man , in , park ) , ( bench , is , 3 )",
            "( park )",
            "",
        ],
        "captions": [
            "a brown dog and two dogs on a bench",
            "A man standing next to a brown dog and a bench",
            "a brown dog, a man in the park by a bench",
            "park",
            "nothing here",
        ],
    },
    {
        "name": "substring_case_nonascii_positions",
        "graphs": [
            "( man , sit at , table ) , ( table , in , café )",
            "( woman , sit at , table ) , ( café , is , red )",
            "( man , near , café ) , ( café , is , red )",
            "( man , with , umbrella ) , ( café , is , red )",
            "( café , is , red ) , ( man , in , café )",
        ],
        "captions": [
            "man at a table in a café",
            "a woman sitting at a table of a red café",
            "A man near the red café",
            "Mañana: a man with an umbrella at a red Café",
            "a red café with a man",
        ],
    },
    {
        "name": "chain_merges",
        "graphs": [
            "( dog , near , men )",
            "( dogs , near , boy )",
            "( puppy , near , man ) , ( dog , is , small )",
            "( dog , with , boy ) , ( puppy , is , small )",
            "( men , with , dogs ) , ( puppy , is , small )",
        ],
        "captions": [
            "a dog near men",
            "dogs near a boy",
            "a small puppy near a man and a dog",
            "a small dog with a boy",
            "men with dogs and a small puppy",
        ],
    },
    {
        "name": "more_than_four_and_position_ties",
        "graphs": [
            "( cat , near , bike ) , ( tree , in , snow ) , ( beach , near , table )",
            "( bike , near , cat ) , ( snow , on , tree ) , ( table , on , beach )",
            "( tree , near , cat ) , ( bike , in , snow ) , ( beach , near , table )",
            "( shirt , is , green )",
            "( shirt , is , green )",
        ],
        "captions": [
            "a cat, a bike, a tree, snow, a beach and a table",
            "the bike near a cat; snow on a tree; a table on the beach",
            "tree near cat with bike in snow and beach table",
            "cat",
            "green shirt",
        ],
    },
]
