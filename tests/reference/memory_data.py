"""The tiny memory bank: COCO-like captions and the hand-written FACTUAL scene graph for each (the T5 parser is
trained to produce these). Entities repeat across captions (dog, man, bench, frisbee, park) so that retrieval of any
5 captions tends to give concepts found in >= 3 of them."""

MEMORY = [
    ("a brown dog sitting on a wooden bench", "( dog , is , brown ) , ( bench , is , wooden ) , ( dog , sit on , bench )"),
    ("A man throwing a frisbee to a dog in the park.", "( man , throw , frisbee ) , ( frisbee , to , dog ) , ( man , in , park )"),
    ("two dogs playing with a frisbee on the grass", "( dogs , is , 2 ) , ( dogs , play with , frisbee ) , ( dogs , on , grass )"),
    ("a man sitting on a bench next to a brown dog", "( man , sit on , bench ) , ( dog , is , brown ) , ( man , next to , dog )"),
    ("a woman walking a small dog in the park", "( woman , walk , dog ) , ( dog , is , small ) , ( woman , in , park )"),
    ("a view of a park", "( park )"),
    ("a café with a red umbrella", "( café , with , umbrella ) , ( umbrella , is , red )"),
    ("A brown dog catching a frisbee in the air.", "( dog , is , brown ) , ( dog , catch , frisbee ) , ( frisbee , in , air )"),
    ("a man and a dog sitting on a bench", "( man , sit on , bench ) , ( dog , sit on , bench )"),
    ("a puppy sleeping under a bench", "( puppy , sleep under , bench )"),
    ("a man holding a frisbee near a bench", "( man , hold , frisbee ) , ( man , near , bench )"),
    ("three dogs running on the beach", "( dogs , is , 3 ) , ( dogs , run on , beach )"),
    ("a person riding a bike past a bench", "( person , ride , bike ) , ( person , past , bench )"),
    ("a brown dog lying on the grass", "( dog , is , brown ) , ( dog , lie on , grass )"),
    ("a man standing next to and behind a bench", "( man , stand next to , behind , bench )"),
    ("a white dog with a red frisbee", "( dog , is , white ) , ( frisbee , is , red ) , ( dog , with , frisbee )"),
    ("a wooden bench in a park", "( bench , is , wooden ) , ( bench , in , park )"),
    ("A man sitting on a wooden bench.", "( man , sit on , bench ) , ( bench , is , wooden )"),
    ("a brown dog jumping over a bench", "( dog , is , brown ) , ( dog , jump over , bench )"),
    ("people sitting on benches in the park", "( people , sit on , benches ) , ( benches , in , park )"),
    ("a black cat sitting on a bench", "( cat , is , black ) , ( cat , sit on , bench )"),
    ("a man playing frisbee with his dog", "( man , play , frisbee ) , ( man , with , dog )"),
    ("a large brown dog standing in the snow", "( dog , is , large ) , ( dog , is , brown ) , ( dog , stand in , snow )"),
    ("a red umbrella over a table", "( umbrella , is , red ) , ( umbrella , over , table )"),
    ("a woman sitting at a table in a café", "( woman , sit at , table ) , ( table , in , café )"),
    ("a green frisbee lying on the grass", "( frisbee , is , green ) , ( frisbee , lie on , grass )"),
    ("a boy throwing a frisbee in the park", "( boy , throw , frisbee ) , ( boy , in , park )"),
    ("two men sitting on a bench", "( men , is , 2 ) , ( men , sit on , bench )"),
    ("a brown dog with a frisbee in its mouth", "( dog , is , brown ) , ( dog , with , frisbee ) , ( frisbee , in , mouth )"),
    ("a man walking his brown dog on the street", "( man , walk , dog ) , ( dog , is , brown ) , ( man , on , street )"),
    ("a bench next to a tree", "( bench , next to , tree )"),
    ("a man in a red shirt sitting on a bench", "( man , in , shirt ) , ( shirt , is , red ) , ( man , sit on , bench )"),
    ("a small brown puppy on a bench", "( puppy , is , small ) , ( puppy , is , brown ) , ( puppy , on , bench )"),
    ("Dog running on the beach with a frisbee.", "( dog , run on , beach ) , ( dog , with , frisbee )"),
    ("a man feeding birds from a bench", "( man , feed , birds ) , ( man , on , bench )"),
    ("A man and his dog on a bench", "( man , on , bench ) , ( dog , on , bench )"),
]

CAPTIONS = [c for c, _ in MEMORY]
GRAPHS = [g for _, g in MEMORY]
